import json

from django.core.management.base import BaseCommand, CommandError

from gallery import health


class Command(BaseCommand):
    help = "Print the studio's health as JSON (as /healthz does); exit 1 when a part is down."

    def handle(self, *args, **options):
        report = health.report()
        self.stdout.write(json.dumps(report))
        if report["down"]:
            raise CommandError(f"down: {', '.join(report['down'])}")
