"""OpenAPI: the Bearer token scheme, so the docs show it and Swagger UI's Authorize can send it."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "`Authorization: Bearer <token>`: get one with `POST /api/v1/auth/token` (username and "
                "password); `manage.py seed_loadtest` writes the seeded users' tokens to loadtest/tokens.json."
            ),
        }
