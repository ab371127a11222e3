from django.urls import path

from .cart_consumers import CartConsumer, StaffConsumer
from .consumers import NotificationConsumer

websocket_urlpatterns = [
    path("ws/notifications/", NotificationConsumer.as_asgi()),
    path("ws/cart/", CartConsumer.as_asgi()),
    path("ws/staff/", StaffConsumer.as_asgi()),
]
