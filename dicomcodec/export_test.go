package dicomcodec

// AppendElementLE is appendElementLE, for the external tests that build
// datasets element by element.
var AppendElementLE = appendElementLE
