from django.urls import path, re_path

from gallery.views import collections, gallery, generate, health, preferences, public, sharing, team

urlpatterns = [
    path("", generate.generate, name="gallery-generate"),
    path("healthz", health.healthz, name="healthz"),
    path("preferences/theme/", preferences.theme, name="gallery-theme"),
    path("generate/sizes/", generate.size_field, name="gallery-size-field"),
    path("jobs/<uuid:generation_id>/", generate.job, name="gallery-job"),
    path("jobs/<uuid:generation_id>/cancel/", generate.cancel_job, name="gallery-job-cancel"),
    path("images/<int:image_id>/<str:variant>/", gallery.image_file, name="gallery-image-file"),
    path("gallery/", gallery.gallery, name="gallery-index"),
    path("gallery/<int:image_id>/", gallery.image_detail, name="gallery-detail"),
    path("gallery/<int:image_id>/favourite/", gallery.favourite, name="gallery-favourite"),
    path("gallery/<int:image_id>/delete/", gallery.delete_image, name="gallery-delete"),

    path("collections/", collections.index, name="gallery-collections"),
    path("collections/picker/", collections.picker, name="gallery-collection-picker"),
    path("collections/<int:collection_id>/", collections.detail, name="gallery-collection"),
    path("collections/<int:collection_id>/rename/", collections.rename, name="gallery-collection-rename"),
    path("collections/<int:collection_id>/delete/", collections.delete, name="gallery-collection-delete"),
    path("collections/<int:collection_id>/add/", collections.add, name="gallery-collection-add"),
    path("collections/<int:collection_id>/remove/", collections.remove, name="gallery-collection-remove"),
    path("collections/<int:collection_id>/move/", collections.move, name="gallery-collection-move"),
    path("collections/<int:collection_id>/order/", collections.order, name="gallery-collection-order"),
    path("collections/<int:collection_id>/download/", collections.download, name="gallery-collection-download"),

    path("share/<str:kind>/<str:target_id>/", sharing.create, name="gallery-share"),
    path("shared/", sharing.index, name="gallery-shared"),
    path("shared/<int:link_id>/revoke/", sharing.revoke, name="gallery-share-revoke"),

    path("team/", team.index, name="gallery-team"),
    path("team/<int:user_id>/quota/", team.set_quota, name="gallery-team-quota"),
    path("usage/", team.usage, name="gallery-usage"),

    path("s/<str:token>/", public.page, name="gallery-public"),
    path("s/<str:token>/images/<int:image_id>/<str:variant>/", public.image_file, name="gallery-public-image"),
    path("s/<str:token>/download/", public.download_all, name="gallery-public-download"),
    re_path(r"^s/(?P<rest>.*)$", public.anything_else),
]
