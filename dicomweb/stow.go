package dicomweb

// stowRoutes lists the routes of this resource (stub until its issue lands).
func (s *Server) stowRoutes(base string) []route {
	return nil
}
