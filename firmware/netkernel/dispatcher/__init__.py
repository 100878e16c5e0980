# The dispatcher: steering.py's Dispatcher decides where a frame goes (classifier program,
# flow hash, host rules, overload and early discard; `node.disp`, `cores.disp`),
# flowtable.py remembers each flow's owner, reader.py's FrameReader moves the frames (reads
# the chip, asks the Dispatcher, fills the kernels' rings, takes slots and closed flows
# back; `cores.reader`), and port.py's DispatchPort is a kernel's way to all of it.
