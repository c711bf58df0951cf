"""What goes into an image: templates, the host layer, review and checks."""
