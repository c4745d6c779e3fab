from django.urls import path

from gallery import views

urlpatterns = [
    path("", views.generate, name="gallery-generate"),
    path("generate/sizes/", views.size_field, name="gallery-size-field"),
    path("jobs/<uuid:generation_id>/", views.job, name="gallery-job"),
    path("jobs/<uuid:generation_id>/cancel/", views.cancel_job, name="gallery-job-cancel"),
    path("images/<int:image_id>/<str:variant>/", views.image_file, name="gallery-image-file"),
]
