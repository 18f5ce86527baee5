from rest_framework import serializers


class AccountOutputSerializer(serializers.Serializer):
    userId = serializers.IntegerField(source="user_id")
    balance = serializers.IntegerField(help_text="Minor units.")


class TokenLoginInputSerializer(serializers.Serializer):
    # Bounded so that a login cannot make the password hasher chew on megabytes.
    username = serializers.CharField(max_length=150, trim_whitespace=False)
    password = serializers.CharField(max_length=1024, trim_whitespace=False, write_only=True)


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField(source="key", help_text="Shown this once: only its hash is stored.")
    expiresAt = serializers.DateTimeField(source="expires_at")
