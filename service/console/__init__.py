"""The operator console (contract §7): server-rendered pages over the operator API's
functions, plain forms that work without JavaScript."""
