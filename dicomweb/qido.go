package dicomweb

// qidoRoutes lists the routes of this resource (stub until its issue lands).
func (s *Server) qidoRoutes(base string) []route {
	return nil
}
