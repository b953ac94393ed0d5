"""Recognising the views of optional frameworks (Django REST framework) without importing them.

The middleware and the decorator both need to know whether a view is DRF's,
and neither may import DRF: it is an optional extra. A view can only be
DRF's if DRF was imported already (by the URLconf that holds it).
"""

from __future__ import annotations

import sys
from typing import Any


def drf_view_class(target: Any) -> type | None:
    """The ``APIView`` subclass behind ``target``, or None when it is not a DRF view.

    ``target`` is a view class, or what ``APIView.as_view()`` or ``@api_view``
    returned (DRF keeps the class as ``cls`` on it).
    """
    if "rest_framework" not in sys.modules:
        return None
    from rest_framework.views import APIView

    view_class = target if isinstance(target, type) else getattr(target, "cls", None)
    if isinstance(view_class, type) and issubclass(view_class, APIView):
        return view_class
    return None
