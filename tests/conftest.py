pytest_plugins = ["mesh.testing", "mail_support"]
