from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from gallery.models import Collection, CollectionItem, Generation, Image, Quota, ShareLink


class CollectionItemInline(admin.TabularInline):
    model = CollectionItem
    raw_id_fields = ["image"]
    extra = 0


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "updated"]
    search_fields = ["name", "owner__username"]
    raw_id_fields = ["owner"]
    inlines = [CollectionItemInline]


@admin.register(ShareLink)
class ShareLinkAdmin(admin.ModelAdmin):
    list_display = ["__str__", "owner", "created", "expires_at", "revoked_at", "views", "last_viewed_at"]
    list_filter = ["show_parameters", "allow_downloads"]
    search_fields = ["owner__username"]
    raw_id_fields = ["owner", "image", "generation", "collection"]
    # The secret and digest stay out of the admin's forms: neither is the link, and neither should change.
    exclude = ["secret", "digest"]
    readonly_fields = ["views", "last_viewed_at", "created"]
    actions = ["revoke"]

    @admin.action(description="Revoke the selected links")
    def revoke(self, request, queryset):
        for link in queryset:
            link.revoke()

    def has_add_permission(self, request) -> bool:
        return False  # a link is made from the studio's Share button, which derives its token


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "owner", "status", "created"]
    list_filter = ["status", "model"]
    search_fields = ["prompt", "owner__username"]
    raw_id_fields = ["owner"]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["__str__", "owner", "model", "width", "height", "created"]
    list_filter = ["model", "shape"]
    raw_id_fields = ["owner", "generation"]
    exclude = ["search"]


class QuotaInline(admin.StackedInline):
    model = Quota
    verbose_name = verbose_name_plural = "Daily image quota"
    can_delete = False  # emptying the field puts the designer back on the studio default


# Django's User admin, with the designer's daily quota on the same page.
admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class DesignerAdmin(UserAdmin):
    inlines = [*UserAdmin.inlines, QuotaInline]
