"""One module per op: schema glue (fake + autograd registration), the public function, the reference."""
