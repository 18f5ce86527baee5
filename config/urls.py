from csp.constants import SELF as CSP_SELF
from csp.constants import UNSAFE_INLINE
from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path, register_converter
from django.views.generic import RedirectView, TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from accounts.api import MeApi, TokenApi, TokensApi
from inventory.api import ProductDetailApi, ProductListApi
from ops import health, operator
from ops.metrics_api import metrics_view
from orders.api import OrderCancelApi, OrderDetailApi, OrderListCreateApi


class IdConverter:
    """A positive id that fits PostgreSQL's bigint; anything else is a plain 404."""

    regex = "[1-9][0-9]{0,17}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(IdConverter, "id")

# The API docs pages run their bundled scripts from static files (Swagger's settings too: the
# split view serves them as a script), but both style themselves inline, draw data: images and
# Redoc renders in a blob: worker: their policy allows that on these two pages only.
docs_policy = csp_update({"style-src": [UNSAFE_INLINE], "worker-src": [CSP_SELF, "blob:"]})

api_v1 = [
    path("orders", OrderListCreateApi.as_view(), name="orders"),
    # Path parameters are named as the answers name the same ids (camelCase): one convention
    # for the schema, the README and docs/, and the bodies.
    path("orders/<id:orderId>", OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<id:orderId>/cancel", OrderCancelApi.as_view(), name="order-cancel"),
    path("products", ProductListApi.as_view(), name="products"),
    path("products/<id:productId>", ProductDetailApi.as_view(), name="product-detail"),
    path("accounts/me", MeApi.as_view(), name="accounts-me"),
    path("auth/token", TokenApi.as_view(), name="auth-token"),
    path("auth/tokens", TokensApi.as_view(), name="auth-tokens"),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/shop/", permanent=False)),
    path("shop/", TemplateView.as_view(template_name="shop/index.html"), name="shop"),
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics_view, name="metrics"),
    path("admin/operator/", operator.page, name="operator"),
    path("admin/operator/data", operator.data, name="operator-data"),
    path("admin/", admin.site.urls),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs", docs_policy(SpectacularSwaggerSplitView.as_view(url_name="schema")), name="docs"),
    path("api/redoc", docs_policy(SpectacularRedocView.as_view(url_name="schema")), name="redoc"),
    path("api/v1/", include(api_v1)),
]

handler400 = "kernel.errors.handler400"
handler403 = "kernel.errors.handler403"
handler404 = "kernel.errors.handler404"
handler500 = "kernel.errors.handler500"
