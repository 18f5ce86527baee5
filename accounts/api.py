from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import account_get
from accounts.serializers import AccountOutputSerializer


class MeApi(APIView):
    @extend_schema(responses={200: AccountOutputSerializer}, summary="The caller's balance")
    def get(self, request):
        return Response(AccountOutputSerializer(account_get(user_id=request.user.id)).data)
