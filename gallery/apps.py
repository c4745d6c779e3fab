from django.apps import AppConfig


class GalleryConfig(AppConfig):
    name = "gallery"
    verbose_name = "Gallery"

    def ready(self):
        from gallery.catalog import catalog

        catalog()  # a broken QWEN_CATALOG_FILE stops start-up here, not at the first form

        import jieba
        from celery.signals import worker_ready, worker_shutting_down

        from gallery import pipeline

        # A warm shutdown lets calls in flight finish; no turn starts a new one after it begins.
        worker_shutting_down.connect(lambda **kwargs: pipeline.STOPPING.set(), weak=False)
        # A worker's first stored image would load jieba's dictionary for its search vector: load it now.
        worker_ready.connect(lambda **kwargs: jieba.initialize(), weak=False)
