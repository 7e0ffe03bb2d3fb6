from django.db import models


class Order(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    total = models.IntegerField()

    class Meta:
        db_table = "orders"


class Confirmation(models.Model):
    order_id = models.CharField(max_length=64)
    total = models.IntegerField()

    class Meta:
        db_table = "confirmations"
