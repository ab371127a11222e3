"""Number every user's notifications 1, 2, 3... (the stream), existing rows included.

Existing rows are numbered per recipient in id order, the best order known for them; the
stream row of each recipient starts at the number of their last one. The column becomes
required (and unique per recipient) in the next migration, in its own transaction.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

BATCH = 1000


def number_existing_notifications(apps, schema_editor):
    Notification = apps.get_model("notifications", "Notification")
    NotificationStream = apps.get_model("notifications", "NotificationStream")
    recipients = Notification.objects.order_by().values_list("recipient_id", flat=True).distinct()
    for recipient_id in recipients.iterator():
        seq = 0
        batch = []
        for notification in Notification.objects.filter(recipient_id=recipient_id).order_by("pk").only("pk").iterator():
            seq += 1
            notification.seq = seq
            batch.append(notification)
            if len(batch) == BATCH:
                Notification.objects.bulk_update(batch, ["seq"])
                batch = []
        if batch:
            Notification.objects.bulk_update(batch, ["seq"])
        NotificationStream.objects.create(recipient_id=recipient_id, last_seq=seq)


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="NotificationStream",
            fields=[
                (
                    "recipient",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="notification_stream",
                        serialize=False,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                ("last_seq", models.PositiveBigIntegerField(default=0)),
            ],
        ),
        migrations.AddField(
            model_name="notification",
            name="seq",
            field=models.PositiveBigIntegerField(
                null=True,
                editable=False,
                help_text="Position in the recipient's stream: 1, 2, 3... in commit order.",
            ),
        ),
        migrations.RunPython(number_existing_notifications, migrations.RunPython.noop, elidable=False),
    ]
