"""Billing: imports cost and revenue, maps cost lines to observed resources and allocates them over tenants."""
