from rest_framework import serializers


class AccountOutputSerializer(serializers.Serializer):
    userId = serializers.IntegerField(source="user_id")
    balance = serializers.IntegerField(help_text="Minor units.")
