from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from inventory.errors import ProductNotFound
from inventory.selectors import product_get, product_list, with_live_stock
from inventory.serializers import ProductOutputSerializer
from kernel.schema import raises


class ProductListApi(APIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(responses={200: ProductOutputSerializer(many=True)}, summary="Products on sale, with live stock")
    def get(self, request):
        paginator = self.pagination_class()
        page = with_live_stock(paginator.paginate_queryset(product_list(), request, view=self))
        return paginator.get_paginated_response(ProductOutputSerializer(page, many=True).data)


class ProductDetailApi(APIView):
    @extend_schema(responses={200: ProductOutputSerializer}, summary="One product, with live stock")
    @raises(ProductNotFound)
    def get(self, request, productId: int):  # the URL names it as the API does
        product = with_live_stock([product_get(product_id=productId)])[0]
        return Response(ProductOutputSerializer(product).data)
