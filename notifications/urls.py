from django.urls import path

from . import views

app_name = "notifications"

urlpatterns = [
    path("", views.InboxView.as_view(), name="inbox"),
    path("api/", views.api_list, name="api_list"),
    path("api/unread/", views.api_unread, name="api_unread"),
    path("api/read/", views.api_read, name="api_read"),
    path("preferences/", views.preferences, name="preferences"),
    path("stock-alerts/", views.stock_alert, name="stock_alert"),
    path("stock-alerts/cancel/", views.stock_alert_cancel, name="stock_alert_cancel"),
]
