package outbound

// H2Unprocessed is h2Unprocessed, for the tests that drive the real
// HTTP/2 transport against a real server (h2_refused_test.go).
var H2Unprocessed = h2Unprocessed
