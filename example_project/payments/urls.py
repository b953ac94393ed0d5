"""``/payments/``: the list and create (POST) of the caller's payments; one per payment."""

from __future__ import annotations

from rest_framework.routers import SimpleRouter

from payments import views

app_name = "payments"

router = SimpleRouter()
router.register("", views.PaymentViewSet, basename="payment")
urlpatterns = router.urls
