from __future__ import annotations

import importlib.util

from django.contrib import admin
from django.urls import include, path, re_path

from tests.testapp import fault_views, views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("create/", views.create),
    path("slow-first-time/", views.slow_first_time),
    path("status/<int:code>/", views.status),
    path("binary/", views.binary),
    path("explode/", views.explode),
    path("stream/", views.stream),
    path("async-stream/", views.async_stream),
    path("exempt/", views.exempt),
    path("decorated/", views.decorated_required),
    path("decorated-put/", views.decorated_put),
    path("decorated-explode/", views.decorated_explode),
    path("decorated-template/", views.decorated_template),
    path("async-decorated-template/", views.async_decorated_template),
    path("async/", views.async_create),
    path("async-plain/", views.async_plain),
    path("cbv-class/", views.DecoratedClassView.as_view()),
    path("cbv-dispatch/", views.DispatchDecoratedView.as_view()),
    path("echo/", views.echo_json),
    path("cbv-method/", views.MethodDecoratedView.as_view()),
    path("nested-guard/", views.nested_guard),
    path("decorated-broken-template/", views.decorated_broken_template),
    path("decorated-returns-none/", views.decorated_returns_none),
    path("async-decorated-broken-template/", views.async_decorated_broken_template),
    path("async-decorated-returns-none/", views.async_decorated_returns_none),
    path("custom-reason/", views.custom_reason),
    path("sized/<int:size>/", views.sized),
    path("upload/", views.upload),
    re_path(r"^p/(?P<rest>.*)$", views.anywhere),
    path("async-slow/", views.async_slow_first_time),
    path("decorated-async-slow/", views.decorated_async_slow_first_time),
    path("async-create/", views.async_sleepy_create),
    path("decorated-async-create/", views.decorated_async_sleepy_create),
    path("decorated-create/", views.decorated_sleepy_create),
    path("async-killable/", views.async_killable_first_time),
    path("decorated-async-killable/", views.decorated_async_killable_first_time),
    path("stuck/<slug:label>/", fault_views.stuck),
    path("decorated-stuck/<slug:label>/", fault_views.decorated_stuck),
    path("async-stuck/<slug:label>/", fault_views.async_stuck),
    path("decorated-async-stuck/<slug:label>/", fault_views.decorated_async_stuck),
    path("frozen/<slug:label>/", fault_views.frozen),
    path("frozen-in-transaction/<slug:label>/", fault_views.frozen_in_transaction),
    path("dies-after-commit/<slug:label>/", fault_views.dies_after_commit),
    path(
        "dies-after-commit-of-atomic-requests/<slug:label>/",
        fault_views.dies_after_commit_of_atomic_requests,
    ),
]

if importlib.util.find_spec("rest_framework") is not None:  # DRF is an optional extra
    urlpatterns.append(path("drf/", include("tests.testapp.drf_urls")))
