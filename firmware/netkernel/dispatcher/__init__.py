# The dispatcher: steering.py decides where a frame goes (classifier program, flow hash, host
# rules, overload and early discard), flowtable.py remembers each flow's owner, reader.py
# reads the chip and fills the kernels' rings, port.py is a kernel's way to all of it.
