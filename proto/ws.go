package proto

import (
	"encoding/json"
	"time"
)

// WebSocket /ws message types.
const (
	WSStatus        = "status"
	WSJobs          = "jobs"
	WSJobUpdate     = "job_update"
	WSScheduleEvent = "schedule_event"
)

// WSMessage is the envelope of every WebSocket message: {type, timestamp, data}. Data is
// a StatusResponse (status), WSJobs (jobs), a Job (job_update) or a ScheduleEvent.
type WSMessage struct {
	Type      string          `json:"type"`
	Timestamp time.Time       `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

// WSJobsData is the data of the "jobs" message sent on connect: the most recent jobs,
// newest first, passwords masked.
type WSJobsData struct {
	Jobs  []Job `json:"jobs"`
	Total int   `json:"total"`
}
