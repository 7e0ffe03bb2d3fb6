from django.urls import path

from orders import views

urlpatterns = [
    path("health", views.health),
    path("orders", views.create_order),
]
