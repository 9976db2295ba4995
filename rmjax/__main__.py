from rmjax.main import run

run()
