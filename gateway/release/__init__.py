"""Release management: routes, their history, and the admin actions that change them."""
