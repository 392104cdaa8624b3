pytest_plugins = ["mesh.testing", "mail_support", "services.http.testing", "connection_support", "fresh_venv"]
