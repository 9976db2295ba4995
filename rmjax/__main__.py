from rmjax.launch import run

run()
