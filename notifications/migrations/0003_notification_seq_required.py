from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0002_notification_stream"),
    ]

    operations = [
        migrations.AlterField(
            model_name="notification",
            name="seq",
            field=models.PositiveBigIntegerField(
                editable=False,
                help_text="Position in the recipient's stream: 1, 2, 3... in commit order.",
            ),
        ),
        migrations.AddConstraint(
            model_name="notification",
            constraint=models.UniqueConstraint(fields=("recipient", "seq"), name="notification_recipient_seq"),
        ),
    ]
