from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    verbose_name = "Shop"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in, user_logged_out

        from . import receivers

        user_logged_in.connect(receivers.merge_session_cart_on_login, dispatch_uid="shop.merge_session_cart_on_login")
        user_logged_in.connect(receivers.say_logged_in, dispatch_uid="shop.say_logged_in")
        user_logged_out.connect(receivers.say_logged_out, dispatch_uid="shop.say_logged_out")
