from django.apps import AppConfig


class GalleryConfig(AppConfig):
    name = "gallery"
    verbose_name = "Gallery"

    def ready(self):
        from gallery.catalog import catalog

        catalog()  # a broken QWEN_CATALOG_FILE stops start-up here, not at the first form
