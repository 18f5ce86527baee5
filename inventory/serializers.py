from rest_framework import serializers


class ProductOutputSerializer(serializers.Serializer):
    productId = serializers.IntegerField(source="id")
    name = serializers.CharField()
    price = serializers.IntegerField(help_text="Minor units.")
    stock = serializers.IntegerField(source="live_stock", help_text="Units available now (live, from Redis).")
