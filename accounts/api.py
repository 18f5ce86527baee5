from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.errors import InvalidCredentials, LoginRateLimited
from accounts.selectors import account_get
from accounts.serializers import AccountOutputSerializer, TokenLoginInputSerializer, TokenOutputSerializer
from accounts.services import token_login, token_revoke, token_revoke_all
from kernel.schema import raises


class MeApi(APIView):
    @extend_schema(responses={200: AccountOutputSerializer}, summary="The caller's balance")
    def get(self, request):
        return Response(AccountOutputSerializer(account_get(user_id=request.user.id)).data)


class TokenApi(APIView):
    """POST signs in with a password (no token needed); DELETE revokes the caller's token."""

    def get_permissions(self):
        return [AllowAny()] if self.request.method == "POST" else super().get_permissions()

    def perform_authentication(self, request):
        # A login may carry a stale token in its Authorization header: it is not read.
        if request.method != "POST":
            super().perform_authentication(request)

    @extend_schema(
        request=TokenLoginInputSerializer,
        responses={201: TokenOutputSerializer},
        auth=[],
        summary="Get a bearer token with username and password",
        description="The token is shown in this answer only; the server keeps its SHA-256. It expires at "
        "`expiresAt` (TOKEN_LIFETIME_DAYS) and can be revoked with DELETE. Too many attempts for one username "
        "or address (an IPv6 /64 counts as one), or too many failed logins site-wide: 429 until the window ends "
        "(`Retry-After`; `details.scope`: `username`, `ip`, `global`).",
    )
    @raises(InvalidCredentials, LoginRateLimited)
    def post(self, request):
        serializer = TokenLoginInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = token_login(**serializer.validated_data, client_ip=request.META.get("REMOTE_ADDR", ""))
        return Response(TokenOutputSerializer(issued).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={204: None},
        summary="Revoke the caller's own token",
        description="Every server refuses the token within a second of this answer.",
    )
    def delete(self, request):
        token_revoke(key=request.auth, user_id=request.user.id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokensApi(APIView):
    """DELETE revokes every token of the caller: signing out everywhere."""

    @extend_schema(
        request=None,
        responses={204: None},
        summary="Revoke all of the caller's tokens",
        description="Every token of the caller, this one included, is refused by every server within a second "
        "of this answer. A password change does the same.",
    )
    def delete(self, request):
        token_revoke_all(user_id=request.user.id)
        return Response(status=status.HTTP_204_NO_CONTENT)
