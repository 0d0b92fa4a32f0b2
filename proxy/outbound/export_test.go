package outbound

// Test rigs of the internal tests that the external ones (package
// outbound_test) use too.
var ResettingH2Upstream = resettingH2Upstream
var AckControl = ackControl
var ServeH2c = serveH2c
