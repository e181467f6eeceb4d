package unotify

// Stats are a supervisor's counters.
type Stats struct {
	// Notifications counts the calls received; Continued those let run
	// as they were (not an emulated socket or device).
	Notifications uint64 `json:"notifications"`
	Continued     uint64 `json:"continued"`
	// InFlight is the number of calls being handled; MaxInFlight the
	// most at once since the start. Waiting counts handlers waiting for
	// a connection.
	InFlight    int64 `json:"in_flight"`
	MaxInFlight int64 `json:"max_in_flight"`
	Waiting     int64 `json:"waiting"`
	// Sockets is the number of emulated sockets known; Refused counts
	// sockets and accepts refused at MaxSockets.
	Sockets int   `json:"sockets"`
	Refused int64 `json:"refused"`
	// Interrupted counts calls whose caller went away before the answer.
	Interrupted uint64 `json:"interrupted"`
	// NSM counts /dev/nsm ioctls performed.
	NSM uint64 `json:"nsm"`
}
