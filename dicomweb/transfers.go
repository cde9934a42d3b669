package dicomweb

// transferRoutes lists the routes of this resource (stub until its issue lands).
func (s *Server) transferRoutes(base string) []route {
	return nil
}
