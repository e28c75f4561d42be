"""Repository-wide pytest settings."""

# The template's tests need the template installed; tests/test_plugin_template.py installs it for real with pip
# and runs them there.
collect_ignore_glob = ["contrib/plugin-template/tests/*"]
