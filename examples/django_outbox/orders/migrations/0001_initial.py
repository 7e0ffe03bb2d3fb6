from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = [("ktasks", "0001_initial")]
    operations = [
        migrations.CreateModel(
            name="Order",
            fields=[("id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                    ("total", models.IntegerField())],
            options={"db_table": "orders"},
        ),
        migrations.CreateModel(
            name="Confirmation",
            fields=[("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                    ("order_id", models.CharField(max_length=64)),
                    ("total", models.IntegerField())],
            options={"db_table": "confirmations"},
        ),
    ]
