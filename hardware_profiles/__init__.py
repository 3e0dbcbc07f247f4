"""Built-in GPU profiles (package data). The __init__ lets setuptools editable installs map this folder."""
