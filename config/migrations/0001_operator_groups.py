"""Two groups to grant the admin's rights by: running a sale, and moving customers' money.

Created once, here, so that what an administrator later changes in a group stays changed.
Permissions are normally created after `migrate` (post_migrate); these groups need them now,
so they are created first for the apps involved (create_permissions skips those that exist).
"""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUPS = {
    "Sale operators": [
        "inventory.view_product", "inventory.add_product", "inventory.change_product", "inventory.adjust_stock",
        "inventory.view_stockmovement",
        "coupons.view_coupon", "coupons.add_coupon", "coupons.change_coupon", "coupons.view_couponredemption",
        "orders.view_order", "orders.view_orderitem",
    ],
    "Balance operators": [
        "accounts.view_account", "accounts.adjust_balance", "accounts.view_balanceentry",
        "payments.view_payment", "payments.view_refund",
        "orders.view_order", "orders.view_orderitem",
    ],
}  # fmt: skip


def create_groups(apps, schema_editor):
    labels = {name.split(".")[0] for names in GROUPS.values() for name in names}
    for label in labels:
        create_permissions(global_apps.get_app_config(label), apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for group_name, names in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        for name in names:
            app_label, codename = name.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def delete_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("accounts", "0003_adjust_permission"),
        ("inventory", "0004_adjust_permission"),
        ("coupons", "0001_initial"),
        ("orders", "0001_initial"),
        ("payments", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_groups, delete_groups)]
