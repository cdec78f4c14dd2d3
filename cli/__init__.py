"""The medhdiff command-line interface (installed as the ``medhdiff_cli`` package)."""
