"""The portal's blueprints, registered by hand in app.create_app."""
