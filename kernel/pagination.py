"""The API's one pagination: DRF's page numbers, read as strictly as the schema writes them.

`?page=` is a positive integer in ASCII digits (absent: the first page). DRF reads it with
Python's int(), which also takes " 2", "+2", "1_0" and other scripts' digits, and it takes
"last" and an empty value too: requests the schema says are invalid got a page. Anything but
digits, and a page past the last, is DRF's own 404 "Invalid page."
"""

from __future__ import annotations

import re

from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination

_PAGE = re.compile(r"[1-9][0-9]{0,17}")


class PageNumbers(PageNumberPagination):
    last_page_strings = ()

    def get_page_number(self, request, paginator):
        number = request.query_params.get(self.page_query_param)
        if number is None:
            return 1
        if not _PAGE.fullmatch(number):
            raise NotFound(self.invalid_page_message)
        return number

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}
        return parameters
