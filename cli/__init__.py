"""The ``engine`` command line: thin commands over the packages below."""
