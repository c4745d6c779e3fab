from django.urls import path

from gallery import views

urlpatterns = [
    path("", views.generate, name="gallery-generate"),
    path("generate/sizes/", views.size_field, name="gallery-size-field"),
    path("jobs/<uuid:generation_id>/", views.job, name="gallery-job"),
    path("jobs/<uuid:generation_id>/cancel/", views.cancel_job, name="gallery-job-cancel"),
    path("images/<int:image_id>/<str:variant>/", views.image_file, name="gallery-image-file"),
    path("gallery/", views.gallery, name="gallery-index"),
    path("gallery/<int:image_id>/", views.image_detail, name="gallery-detail"),
    path("gallery/<int:image_id>/favourite/", views.favourite, name="gallery-favourite"),
    path("gallery/<int:image_id>/delete/", views.delete_image, name="gallery-delete"),
]
