"""One module per `rmjax` command: its flags, its one-line summary (`SUMMARY`), an example
(`EXAMPLE`) and `main()`. `rmjax.main` dispatches to them and builds `--help` from them."""
