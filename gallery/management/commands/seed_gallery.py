"""Fill the gallery with realistic bilingual generations, for demos and benchmarks.

No API calls and no files: rows only (images show a placeholder tile). Rows go
in with COPY through a staging table, so a million generations take minutes.
"""

import hashlib
import random
import uuid
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from gallery import search
from gallery.catalog import catalog

# Subjects weigh in Zipf-like: the first are common, the last rare, so searches
# range from a few matches to tens of thousands.
SUBJECTS_ZH = ["一只小猫", "一位少女", "城市夜景", "山水风景", "一只柴犬", "古风少年", "赛博朋克街道", "一杯咖啡",
               "青花瓷茶杯", "樱花树下的女孩", "雪山湖泊", "江南水乡", "机械龙", "宇航员", "熊猫宝宝", "金鱼",
               "敦煌飞天", "竹林小屋", "海边灯塔", "老上海街景", "水墨仙鹤", "锦鲤", "蒸汽火车", "月下狐狸"]
SUBJECTS_EN = ["a kitten", "a young woman", "a city at night", "a mountain landscape", "a shiba inu",
               "a red fox", "a cyberpunk street", "a cup of coffee", "a porcelain teacup", "a lighthouse",
               "an astronaut", "a giant panda", "koi fish", "a steam train", "a dragon", "a samurai",
               "an owl", "a jellyfish", "a bonsai tree", "a vintage car", "puppies", "kittens", "a hummingbird"]
SCENES_ZH = ["在草地上奔跑", "坐在窗边", "漂浮在云端", "站在雨中", "在樱花林里", "在古镇石桥上", "在霓虹灯下",
             "在雪地里玩耍", "在湖边倒影中", "在书房里", "在沙漠中行走", "在星空下"]
SCENES_EN = ["running through a meadow", "sitting by the window", "floating above the clouds",
             "standing in the rain", "under cherry blossoms", "on an old stone bridge", "under neon lights",
             "playing in the snow", "reflected in a still lake", "in a cozy library", "crossing the desert",
             "beneath a starry sky"]
STYLES_ZH = ["电影感", "自然光影", "水彩风格", "油画质感", "国风插画", "宫崎骏风格", "超写实", "柔和色调",
             "胶片颗粒", "黄金时刻", "低饱和度", "高细节", "8K", "广角镜头", "浅景深"]
STYLES_EN = ["cinematic lighting", "soft natural light", "watercolor", "oil painting", "studio ghibli style",
             "hyperrealistic", "pastel colors", "film grain", "golden hour", "volumetric fog", "highly detailed",
             "wide angle", "shallow depth of field", "isometric", "minimalist"]
EXTENSIONS_ZH = ["画面构图平衡，主体清晰", "光线柔和，层次丰富", "色彩和谐，氛围温暖", "细节精致，质感真实"]
EXTENSIONS_EN = ["balanced composition with a clear subject", "soft layered lighting",
                 "harmonious warm palette", "intricate detail and lifelike texture"]
NEGATIVES = ["", "", "blurry, low quality", "模糊，低质量", "extra fingers, deformed hands", "文字，水印",
             "oversaturated", "lowres, jpeg artifacts"]


def zipf_choice(rng: random.Random, items: list[str]) -> str:
    weights = [1 / (rank + 1) for rank in range(len(items))]
    return rng.choices(items, weights)[0]


def make_prompt(rng: random.Random) -> str:
    kind = rng.random()
    styles_zh = rng.sample(STYLES_ZH, rng.randint(1, 3))
    styles_en = rng.sample(STYLES_EN, rng.randint(1, 3))
    if kind < 0.5:
        return "，".join([zipf_choice(rng, SUBJECTS_ZH) + rng.choice(SCENES_ZH), *styles_zh])
    if kind < 0.8:
        return ", ".join([f"{zipf_choice(rng, SUBJECTS_EN)} {rng.choice(SCENES_EN)}", *styles_en])
    return "，".join([zipf_choice(rng, SUBJECTS_ZH) + rng.choice(SCENES_ZH), ", ".join(styles_en)])


def revise(rng: random.Random, prompt: str) -> str:
    if rng.random() < 0.25:
        return ""
    if search.cjk_runs(prompt):
        return f"{prompt}，{rng.choice(EXTENSIONS_ZH)}"
    return f"{prompt}, {rng.choice(EXTENSIONS_EN)}"


class Command(BaseCommand):
    help = "Fill the gallery with N generations of varied Chinese, English and mixed prompts (rows only)."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=1000, help="how many generations to add")
        parser.add_argument("--seed", type=int, default=1, help="random seed, for repeatable data")
        parser.add_argument("--days", type=int, default=365, help="spread the generations over this many days")
        parser.add_argument("--batch", type=int, default=20000)

    def handle(self, *args, count, seed, days, batch, **options):
        if count < 1:
            raise CommandError("--count must be at least 1")
        rng = random.Random(seed)
        owners = self.owners()
        models = list(catalog().values())
        end = timezone.now()
        step = timedelta(days=days) / count
        made = 0
        while made < count:
            size = min(batch, count - made)
            self.copy_batch(rng, owners, models, end - step * (count - made), step, size)
            made += size
            self.stdout.write(f"{made:,} / {count:,} generations")
        self.stdout.write(self.style.SUCCESS(f"Added {count:,} generations."))

    def owners(self) -> list[int]:
        users = get_user_model()
        for name in ("lin", "chen", "maya", "sam", "wei"):
            if not users.objects.filter(username=name).exists():
                users.objects.create_user(name, password=None)
        return list(users.objects.values_list("pk", flat=True))

    def copy_batch(self, rng, owners, models, start, step, size) -> None:
        generations, images = [], []
        for i in range(size):
            spec = rng.choice(models)
            preset = rng.choice(spec.presets)
            prompt = make_prompt(rng)
            negative = rng.choice(NEGATIVES)
            created = start + step * i
            n = rng.choices([1, 2, 4], [70, 15, 15])[0]
            seed = rng.randrange(2**31)
            owner = rng.choice(owners)
            generation_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            generations.append((generation_id, owner, prompt, negative, spec.name, preset.width, preset.height, n,
                                seed, created, created + timedelta(seconds=rng.uniform(4, 40))))
            for index in range(n):
                revised = revise(rng, prompt)
                digest = hashlib.sha256(f"{generation_id}{index}".encode()).hexdigest()
                images.append((generation_id, owner, spec.name, preset.shape, index,
                               f"generations/{generation_id}/{index}.png", preset.width, preset.height,
                               rng.randint(300_000, 4_000_000), digest, (seed + index) % 2**31, revised,
                               created + timedelta(seconds=index),
                               search.latin_text(prompt), search.cjk_vector(prompt),
                               search.latin_text(revised), search.cjk_vector(revised),
                               search.latin_text(negative), search.cjk_vector(negative)))
        with transaction.atomic(), connection.cursor() as cursor:
            self.copy_generations(cursor, generations)
            self.copy_images(cursor, images)

    def copy_generations(self, cursor, rows) -> None:
        columns = ("id, owner_id, prompt, negative_prompt, model, width, height, n, seed, created, finished_at, "
                   "started_at, status, status_detail, error_code, error_message, answers, attempts, "
                   "unconfirmed_calls, retries, waits, api_seconds, prompt_extend, watermark, updated")
        with cursor.copy(f"COPY gallery_generation ({columns}) FROM STDIN") as copy:
            for (gid, owner, prompt, negative, model, width, height, n, seed, created, finished) in rows:
                copy.write_row((gid, owner, prompt, negative, model, width, height, n, seed, created, finished,
                                created, "succeeded", "", "", "", "[]", 1, 0, 0, 0,
                                (finished - created).total_seconds(), True, False, finished))

    def copy_images(self, cursor, rows) -> None:
        cursor.execute("""
            CREATE TEMP TABLE seed_image (
                generation_id uuid, owner_id int, model text, shape text, index smallint, file text,
                width int, height int, bytes int, sha256 text, seed bigint, revised_prompt text,
                created timestamptz, prompt_latin text, prompt_cjk text, revised_latin text,
                revised_cjk text, negative_latin text, negative_cjk text
            ) ON COMMIT DROP""")
        with cursor.copy("COPY seed_image FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(f"""
            INSERT INTO gallery_image (generation_id, owner_id, model, shape, index, file, width, height, bytes,
                                       sha256, seed, revised_prompt, created, search)
            SELECT generation_id, owner_id, model, shape, index, file, width, height, bytes, sha256, seed,
                   revised_prompt, created, {search.document_sql(("prompt_latin", "prompt_cjk"),
                                                                 ("revised_latin", "revised_cjk"),
                                                                 ("negative_latin", "negative_cjk"))}
            FROM seed_image""")
