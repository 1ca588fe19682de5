"""Entry points above everything else: the `dsrflow` command line and the embedded demo.
Nothing below imports them."""
